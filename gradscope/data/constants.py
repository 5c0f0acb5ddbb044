"""Dataset constants: CIFAR class names and the per-channel statistics used to normalize."""

# Class names of CIFAR-10 in label order (also the alphabetical order ImageFolder uses).
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # per-channel mean of train pixels, in [0, 1] units
CIFAR10_STD = (0.2470, 0.2435, 0.2616)  # per-channel std of train pixels, in [0, 1] units
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)  # per-channel mean of train pixels, in [0, 1] units
CIFAR100_STD = (0.2673, 0.2564, 0.2762)  # per-channel std of train pixels, in [0, 1] units
