"""Training and the command line: cli.py is run.py's LightningCLI (fit, validate, test,
audit) and `parse_config` for study and submit; fit.py trains the references and the
target, resumes, and writes done.json; loggers.py builds each model's loggers."""
