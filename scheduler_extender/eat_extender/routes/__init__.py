"""HTTP routes, one APIRouter per resource: ``filter``, ``prioritize``, ``health``, ``metrics``."""
