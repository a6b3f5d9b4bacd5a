"""The MLflow registry aliases the platform moves: `challenger` on registration, `champion` on promotion."""

CHAMPION = "champion"
CHALLENGER = "challenger"
