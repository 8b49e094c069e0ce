"""cifargen: train, evaluate and sample a VAE, a conditional VAE and an AC-GAN on CIFAR-10."""

from .data import CIFAR10_CLASSES, BatchLoader, ImageDataset, load_cifar10, load_dataset, load_image_folder
from .errors import CifargenError, ConfigError, DataError, TrainingError
from .images import denormalize, make_grid
from .losses import kl_divergence, reconstruction_loss, ssim
from .modelfile import load, save_model
from .models import CVAE, VAE, VAEConfig
from .api import evaluate_model, train
from .registry import MODELS, default_config
from .schedules import KLSchedule

__version__ = "0.1.0"

__all__ = [
    "CIFAR10_CLASSES", "BatchLoader", "ImageDataset", "load_cifar10", "load_dataset", "load_image_folder",
    "CifargenError", "ConfigError", "DataError", "TrainingError", "denormalize", "make_grid",
    "kl_divergence", "reconstruction_loss", "ssim", "VAE", "CVAE", "VAEConfig", "MODELS", "default_config",
    "train", "evaluate_model", "KLSchedule", "load", "save_model",
]
