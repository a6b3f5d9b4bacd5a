"""The one serving runtime: a KServe model server that hosts MLflow champions, locally and in the cluster."""
