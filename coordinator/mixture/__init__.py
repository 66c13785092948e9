"""The Mixture-of-Rewards: per-site calibration, the router's features and training, the fusion strategies
behind one interface, trust in each site and image-contrast scoring."""
