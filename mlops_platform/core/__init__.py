"""Pure ML core: specs, data, validation, training, evaluation. No Dagster imports here."""
