"""The networks: pseudo-3D layers, the SpaceTimeUNet of every diffusion stage, the text/image encoder, the prior,
the control adapter, and the shipped MAV-Tiny family's configs."""
