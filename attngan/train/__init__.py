"""Training loops: DAMSM pretraining, the GAN, checkpoints and run set-up."""
