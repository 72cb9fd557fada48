"""MembershipDataModule: a data pool split by the membership plan.

`model_index` picks whose training set is loaded: 0 is the target, 1..K the
references; None means "the whole audit" to `run.py fit` and loads the target.
Each model validates on its own non-members, and `test` is the population
hold-out, on which no model ever trains. With `canaries`, the target (model 0) also
trains on its included canaries (datamodules/canaries.py); no other set holds one.
"""

from __future__ import annotations


import lightning as L
import torch
from torch.utils.data import DataLoader

from .canaries import Joined, canary_images, check_canaries
from .datasets import IndexedImages, Pool, crop_flip, dataset_info, load_pool
from core.errors import check_int
from core.rundir import check_num_references, check_trained_on
from core.seeds import derive_seed
from .plan import MIN_AUDIT_SIZE, MIN_POPULATION, WHY_AUDIT, Plan, load_or_create_plan, resolve_population


class EpochShuffle(torch.utils.data.distributed.DistributedSampler):
    """A random order of range(n) that is a function of (seed, epoch) alone, where the epoch
    is read when an epoch's iteration starts (`epoch_fn`, the trainer's current epoch):
    Lightning creates the first iterator of a fit, fresh or resumed, before it calls any
    epoch hook. Yields (position, epoch), so that augmentation can be seeded per sample too
    (datasets.IndexedImages).

    Under DDP (`num_replicas` > 1) it shards that order itself, as DistributedSampler does:
    padded by repeating its first positions to a multiple of the world size, then every
    num_replicas-th position from `rank`. Being a DistributedSampler, Lightning does not wrap
    it in its own, whose extra shuffle follows `set_epoch`; a resumed fit calls set_epoch
    with the epoch the checkpoint was saved in, not the one it resumes, so the resumed
    epoch's batches differed from an uninterrupted run's. `set_epoch` is ignored here."""

    def __init__(self, n: int, seed: int, epoch_fn, num_replicas: int = 1, rank: int = 0):
        # DistributedSampler.__init__ is not called: it wants a dataset and a process group.
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.n, self.seed, self.epoch_fn = n, seed, epoch_fn
        self.num_replicas, self.rank, self.shuffle, self.drop_last, self.epoch = num_replicas, rank, True, False, 0
        self.num_samples = -(-n // num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # kept for whoever reads it; the order follows epoch_fn

    def __iter__(self):
        epoch = int(self.epoch_fn())
        g = torch.Generator().manual_seed(derive_seed(self.seed, "shuffle", epoch))
        order = torch.randperm(self.n, generator=g).tolist()
        if self.num_replicas > 1:
            while len(order) < self.total_size:  # as DistributedSampler pads
                order += order[: self.total_size - len(order)]
            order = order[self.rank:self.total_size:self.num_replicas]
        return iter([(i, epoch) for i in order])


def _epoch_poisson_class():
    """Opacus's Poisson batch sampler, its generator seeded from (seed, epoch) when an epoch's
    iteration starts, yielding (position, epoch) items as EpochShuffle does."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    class EpochPoisson(UniformWithReplacementSampler):
        def __iter__(self):
            epoch = int(self.epoch_fn())
            self.generator = torch.Generator().manual_seed(derive_seed(self.seed, "poisson", epoch))
            for batch in super().__iter__():
                yield [(i, epoch) for i in batch]

    return EpochPoisson


class MembershipDataModule(L.LightningDataModule):
    def __init__(
        self,
        dataset: str = "digits",
        root: str = "data",
        download: bool = False,
        num_references: int = 4,
        model_index: int | None = None,
        seed: int = 0,
        population: int | float | None = None,
        audit_size: int | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        augment: bool | None = None,
        image_size: int | None = None,
        resize: int | None = None,
        T: int = 4,
        run_dir: str | None = None,
        canaries: dict | None = None,
    ):
        """
        Args:
            dataset: digits (embedded, no download), mnist, fashion_mnist, cifar10, cifar100;
                imagefolder (any class-per-folder image dataset under root); the event
                datasets nmnist, dvs128_gesture, cifar10_dvs.
            root: folder holding the dataset's files.
            download: let torchvision download missing files (needs internet; the
                torchvision datasets only).
            num_references: K, the number of reference models (even, >= 0).
            model_index: which model's training split to load (0 = target, 1..K references).
            seed: seed of the membership plan.
            population: size of the population hold-out: a fraction in (0, 1), a count,
                or null for about 1,000 samples (10% of a pool under 10,000, e.g. digits);
                at least 100 (docs/limits.md).
            audit_size: N, the number of audit samples (null: the rest of the pool); at
                least 50 (docs/limits.md).
            batch_size: training batch size.
            eval_batch_size: batch size for validation, test and attack queries.
            num_workers: DataLoader workers.
            augment: random crop + flip in training (null: on for CIFAR and imagefolder).
            image_size: imagefolder: side of the square the images are cropped to (null: 128);
                event datasets: side of the frames the sensor's pixels are binned into
                (null: the sensor's). Not allowed for the built-in datasets.
            resize: imagefolder: the shorter side is resized to this before the centre crop
                (null: image_size).
            T: event datasets: frames per sample. run.py sets it from model.T, so an SNN's
                time steps are the frames; an ANN gets the frames summed.
            run_dir: where the plan is persisted (set from the top-level --run_dir).
            canaries: {count: m, kind: mislabel | noise} adds m canaries, each in the target's
                training set independently with probability 1/2 (the one-run canary audit);
                mislabel: pool images, out of the audit set and the population, with a fixed
                wrong label; noise: fixed random-pixel images with random labels. Null: none.
        """
        super().__init__()
        info = dataset_info(dataset, root, image_size, resize, download)
        check_int("model.T", T, 1, what=" (run.py gives it to the data module as data.T)")
        check_num_references(num_references)
        if model_index is not None:
            check_int("data.model_index", model_index, 0, num_references, what=" (0 = target, 1..K = references)")
        check_int("data.batch_size", batch_size, 1)
        check_int("data.eval_batch_size", eval_batch_size, 1)
        check_int("data.num_workers", num_workers, 0)
        check_int("data.seed", seed, 0, 2 ** 63 - 1)  # torch.Generator.manual_seed's range
        canaries = check_canaries(canaries)
        if isinstance(population, float) and population >= 1 and population.is_integer():
            population = int(population)  # a count that a parser read as 1000.0
        # The minimum sizes that need no pool, checked here so that the parser (and so `run.py
        # study` and `submit`, before anything trains) refuses them; the rest come with the plan.
        if audit_size is not None:
            check_int("data.audit_size", audit_size, MIN_AUDIT_SIZE,
                      what=f" or null (the rest of the pool): {WHY_AUDIT}")
        if isinstance(population, int) and not isinstance(population, bool):
            resolve_population(population, max(population, MIN_POPULATION) + MIN_AUDIT_SIZE)  # a count's own checks
        self.save_hyperparameters()
        self.dataset = dataset
        self.root = root
        self.download = download
        self.num_references = num_references
        self.model_index = model_index
        self.seed = seed
        self.population = population
        self.audit_size = audit_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.resize = resize
        self.T = T
        self.run_dir = run_dir
        self.canaries = canaries
        self.input_shape, self.num_classes = info.input_shape, info.num_classes
        self.normalization = (list(info.mean), list(info.std))
        # Linked to the model: None for images; for event data the number of frames in each
        # sample, which tells the model that its input is [B, T, 2, H, W] event counts.
        self.input_frames = T if info.events else None
        self.augment = info.augment if augment is None else augment
        self.pool: Pool | None = None
        self.plan: Plan | None = None
        # Set by run.py's training (seed_everything + model index): each epoch's order and
        # augmentation are then a function of (train_seed, epoch) alone (EpochShuffle).
        self.train_seed: int | None = None

    # -- the plan -----------------------------------------------------------------------
    @property
    def index(self) -> int:
        """The model whose training split is loaded (None means the target)."""
        return 0 if self.model_index is None else self.model_index

    @property
    def membership(self) -> torch.Tensor:
        return self._need_plan().membership

    @property
    def population_indices(self) -> torch.Tensor:
        return self._need_plan().population_indices

    @property
    def audit_indices(self) -> torch.Tensor:
        return self._need_plan().audit_indices

    def _need_plan(self) -> Plan:
        if self.plan is None:
            raise RuntimeError("the membership plan exists after prepare_data() and setup()")
        return self.plan

    def _load(self, save: bool = True) -> Plan:
        if self.pool is None:
            self.pool = load_pool(self.dataset, self.root, self.download, self.image_size, self.resize, self.T,
                                  self.num_workers)
        if self.plan is not None:
            return self.plan
        plan = load_or_create_plan(
            self.run_dir, save=save, dataset=self.dataset, pool_size=len(self.pool),
            num_references=self.num_references, seed=self.seed, population=self.population, audit_size=self.audit_size,
            dataset_identity=self.pool.identity, canaries=self.canaries,
            **({"pool_labels": self.pool.labels, "num_classes": self.num_classes, "sample": self.pool.images[0]}
               if self.canaries else {}),
        )
        if save:
            self.plan = plan
        return plan

    def planned(self) -> Plan:
        """The plan this module will use, without writing anything: the saved one (checked), or
        the one prepare_data() would draw. For checks that must run before the run directory
        is touched."""
        return self._load(save=False)

    def prepare_data(self) -> None:
        # Runs on one process per node: downloads files and writes the plan once;
        # setup() on every rank then reads the same plan back from the run directory.
        self._load()

    def setup(self, stage: str | None = None) -> None:
        self._load()

    # -- checkpoints carry the plan -------------------------------------------------------
    def state_dict(self) -> dict:
        """Saved in every checkpoint: which plan and which row the model was trained on."""
        return {"plan": dict(self._need_plan().fingerprint), "model_index": self.index}

    def load_state_dict(self, state: dict) -> None:
        """On resume: refuse a checkpoint trained on another plan or another model's split."""
        if self.plan is not None:
            check_trained_on(state, self.plan.fingerprint, self.index,
                             f"data.model_index={self.index}: the checkpoint being resumed")

    def subset_positions(self, size: int | None, seed: int = 0, plan: Plan | None = None) -> torch.Tensor | None:
        """A fixed random subset of audit positions (sorted), or None for all."""
        n = (plan or self._need_plan()).membership.shape[1]
        if size is None or size >= n:
            return None
        g = torch.Generator().manual_seed(seed)
        return torch.randperm(n, generator=g)[:size].sort().values

    # -- datasets -----------------------------------------------------------------------
    def _audit_subset(self, mask: torch.Tensor, augment: bool) -> IndexedImages:
        positions = mask.nonzero().squeeze(1)
        aug = crop_flip(self.input_shape[-1]) if augment else None
        return IndexedImages(self.pool, self.audit_indices[positions], positions, aug)

    def member_set(self, model_index: int | None = None, augment: bool = False) -> IndexedImages:
        m = self.index if model_index is None else model_index
        return self._audit_subset(self.membership[m], augment)

    def canary_set(self, only_included: bool = False) -> IndexedImages | None:
        """The plan's canaries (None without data.canaries): (image, canary label, canary
        position); `only_included`: those in the target's training set."""
        plan = self._need_plan()
        return None if plan.canaries is None else canary_images(plan.canaries, self.pool, only_included)

    @property
    def canary_included(self) -> torch.Tensor | None:
        """bool [m]: which canaries the target trains on (None without data.canaries)."""
        plan = self._need_plan()
        return None if plan.canaries is None else plan.canaries.included

    def nonmember_set(self, model_index: int | None = None) -> IndexedImages:
        m = self.index if model_index is None else model_index
        return self._audit_subset(~self.membership[m], False)

    def audit_set(self, positions: torch.Tensor | None = None) -> IndexedImages:
        """The audit samples (all N, or those at `positions`); the third item of each
        batch is the sample's rank in that set: 0..N-1, or 0..len(positions)-1."""
        indices = self.audit_indices if positions is None else self.audit_indices[positions]
        return IndexedImages(self.pool, indices)

    def population_set(self) -> IndexedImages:
        """The Z population samples; the third item is the population position."""
        return IndexedImages(self.pool, self.population_indices)

    # -- loaders ------------------------------------------------------------------------
    def _loader(self, ds, shuffle: bool = False, batch_size: int | None = None, sampler=None) -> DataLoader:
        return DataLoader(
            ds, batch_size=batch_size or self.eval_batch_size, shuffle=shuffle, sampler=sampler,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        members = self.member_set(augment=self.augment)
        trainer = getattr(self, "trainer", None)
        epoch_fn = lambda: trainer.current_epoch if trainer else 0  # noqa: E731
        if self.train_seed is not None:
            members.augment_seed = self.train_seed
        if self.index == 0 and self.plan.canaries is not None:  # the target's included canaries; never a reference's
            members = Joined(members, self.canary_set(only_included=True))
        model = trainer.lightning_module if trainer is not None else None
        if getattr(model, "poisson_sampling", False):
            # A DP model (model.dp): DP-SGD's accounting assumes that every training sample joins
            # every batch independently with probability q = 1 / len(loader) (Poisson sampling,
            # batches of batch_size on average), not a shuffle into fixed-size batches.
            from opacus.data_loader import DPDataLoader

            loader = DPDataLoader.from_data_loader(self._loader(members, shuffle=True, batch_size=self.batch_size))
            if self.train_seed is not None:  # the batches of an epoch from (train_seed, epoch), as EpochShuffle
                sampler = loader.batch_sampler
                sampler.__class__ = _epoch_poisson_class()
                sampler.seed, sampler.epoch_fn = self.train_seed, epoch_fn
            return loader
        if self.train_seed is None:  # outside run.py: torch's shuffle, from the global generator
            return self._loader(members, shuffle=True, batch_size=self.batch_size)
        shard = (trainer.distributed_sampler_kwargs if trainer is not None else None) or {}
        return self._loader(members, batch_size=self.batch_size,
                            sampler=EpochShuffle(len(members), self.train_seed, epoch_fn, **shard))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.nonmember_set())

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.population_set())

    def audit_dataloader(self, positions: torch.Tensor | None = None) -> DataLoader:
        return self._loader(self.audit_set(positions))

    def population_dataloader(self) -> DataLoader:
        return self._loader(self.population_set())
