"""The built-in toy world: rendered images with plain-language class names and a tiny pretrained CLIP."""
