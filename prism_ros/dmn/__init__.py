"""DMN: differentiable mapping networks for sparse visual localization (Karkus et al., 2020)."""
