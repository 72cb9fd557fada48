"""What a dataset read from a user's folder is, for the membership plan's fingerprint.

The built-in datasets (digits, MNIST, Fashion-MNIST, CIFAR) are fixed by their
publishers; a folder of the user's (imagefolder, the event datasets) can change
between two runs: a class added, images deleted, a file re-encoded. The plan indexes
the pool by position, so a changed folder would silently give every model other
samples. The identity recorded in the plan is

    classes        the class names, in label order
    class_samples  samples per class
    files, bytes   how many files the reader used, and their total size
    files_sha256   SHA-256 of the sorted lines "<path relative to data.root>\\t<size>"
    contents_sha256  (imagefolder) SHA-256 of the sorted lines "<path>\\t<SHA-256 of the file>"
    + settings     what turns a file into a tensor (e.g. image_size)

Paths are relative, so the same data under another root (a cluster's copy) match.
Names and sizes alone miss a file replaced by one of exactly the same size (two images of
one size swapped between class folders), so an image folder's identity also hashes every
file's contents. Reading them all again on every start would cost a pass over the data
(SHA-256 ran at 1.7 GB/s here, before any disk time, against 41 ms for `stat` on 13,600
files), so each file's hash is cached under its (size, modification time, change time,
inode), in a cache file per data root outside the run directory (`hash_cache_dir`): a
rerun stats the files and reads only those that changed. The change time cannot be set
back by a user (`touch -d` and `os.utime` set it to now), so a file rewritten with its old
modification time is read again. A plan drawn before contents were hashed records no
`contents_sha256` and is compared without it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from core.rundir import write_json


def folder_identity(root: str | Path, files, classes, class_samples, contents: bool = False, **settings) -> dict:
    """The identity of the dataset made of `files` (paths relative to `root`) and its classes;
    with `contents`, a hash of every file's bytes too (cached, see the module's docstring)."""
    root = Path(root)
    lines, total, stats = [], 0, {}
    for f in files:
        rel = Path(f).as_posix()
        st = (root / rel).stat()
        stats[rel] = st
        lines.append(f"{rel}\t{st.st_size}\n")
        total += st.st_size
    digest = hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()
    out = {"classes": list(classes), "class_samples": [int(n) for n in class_samples], "files": len(lines),
           "bytes": total, "files_sha256": digest}
    if contents:
        hashes = content_hashes(root, stats)
        out["contents_sha256"] = hashlib.sha256("".join(sorted(f"{rel}\t{hashes[rel]}\n" for rel in stats))
                                                .encode()).hexdigest()
    return {**out, **settings}


def hash_cache_dir() -> Path:
    """Where the per-file hashes of data folders are cached: $SNN_MIA_CACHE_DIR, else
    $XDG_CACHE_HOME/snn_mia, else ~/.cache/snn_mia."""
    if os.environ.get("SNN_MIA_CACHE_DIR"):
        return Path(os.environ["SNN_MIA_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "snn_mia"


def _stamp(st: os.stat_result) -> list:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def content_hashes(root: Path, stats: dict) -> dict[str, str]:
    """SHA-256 of each file (relative path -> hex), read only when its (size, mtime, ctime,
    inode) differs from the cached one. The cache is rewritten (atomically) when anything was
    read; one that cannot be read or written is ignored: it is only a cache."""
    cache_file = hash_cache_dir() / "file_sha256" / (hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:24]
                                                     + ".json")
    try:
        cached = json.loads(cache_file.read_text())
        cached = cached if isinstance(cached, dict) and cached.get("root") == str(root.resolve()) else {}
    except (OSError, ValueError):
        cached = {}
    entries = cached.get("files", {}) if isinstance(cached.get("files"), dict) else {}
    out, fresh = {}, {}
    for rel, st in stats.items():
        stamp, entry = _stamp(st), entries.get(rel)
        if isinstance(entry, list) and len(entry) == 5 and entry[:4] == stamp:
            out[rel] = entry[4]
        else:
            h = hashlib.sha256()
            with open(root / rel, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[rel] = h.hexdigest()
        fresh[rel] = [*stamp, out[rel]]
    if fresh != entries:
        try:
            write_json(cache_file, {"root": str(root.resolve()), "files": fresh}, indent=None)
        except OSError:
            pass
    return out


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _few(names, limit: int = 3) -> str:
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more


def describe_difference(saved: dict | None, now: dict | None) -> str:
    """What differs between two identities, in one line (empty when they are equal)."""
    if saved is not None and now is not None and "contents_sha256" not in saved:
        now = {k: v for k, v in now.items() if k != "contents_sha256"}  # a plan drawn before contents were hashed
    if saved == now:
        return ""
    if saved is None or now is None:
        return ("the plan records no dataset identity" if saved is None else
                "the plan records a dataset identity that this dataset does not have")
    parts = []
    old_c, new_c = saved.get("classes", []), now.get("classes", [])
    if old_c != new_c:
        gone, new = [c for c in old_c if c not in new_c], [c for c in new_c if c not in old_c]
        what = [f"missing {_few(gone)}"] if gone else []
        what += [f"new {_few(new)}"] if new else []
        parts.append(f"classes: {len(old_c)} in the plan, {len(new_c)} now" + (f" ({'; '.join(what)})" if what
                                                                              else " (another order)"))
    old_n = dict(zip(old_c, saved.get("class_samples", [])))
    new_n = dict(zip(new_c, now.get("class_samples", [])))
    changed = [c for c in old_c if c in new_n and old_n.get(c) != new_n[c]]
    for c in changed[:3]:
        parts.append(f"class {c!r}: {old_n[c]} samples in the plan, {new_n[c]} now")
    if len(changed) > 3:
        parts.append(f"{len(changed) - 3} more classes changed size")
    if (saved.get("files"), saved.get("bytes")) != (now.get("files"), now.get("bytes")):
        parts.append(f"files: {saved.get('files')} ({_size(saved.get('bytes', 0))}) in the plan, "
                     f"{now.get('files')} ({_size(now.get('bytes', 0))}) now")
    elif saved.get("files_sha256") != now.get("files_sha256"):
        parts.append("the same number and total size of files, but other names or sizes "
                     f"(file-list sha256 {str(saved.get('files_sha256'))[:12]} in the plan, "
                     f"{str(now.get('files_sha256'))[:12]} now)")
    elif saved.get("contents_sha256") != now.get("contents_sha256"):
        parts.append("the same files with the same sizes, but other contents: files were replaced or swapped "
                     f"(contents sha256 {str(saved.get('contents_sha256'))[:12]} in the plan, "
                     f"{str(now.get('contents_sha256'))[:12]} now)")
    keys = sorted((set(saved) | set(now)) - {"classes", "class_samples", "files", "bytes", "files_sha256",
                                             "contents_sha256"})
    parts += [f"{k}: plan has {saved.get(k)!r}, config gives {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]
    return "; ".join(parts) or "the identities differ"
