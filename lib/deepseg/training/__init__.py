"""Training a model: losses and threshold calibration shared by every trainer, and training
from a training store of your own imagery and labels (``from_store``)."""
