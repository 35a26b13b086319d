"""The project's Hydra launchers (conf/hydra/launcher/slurm_gpu*.yaml); see launcher.py."""
