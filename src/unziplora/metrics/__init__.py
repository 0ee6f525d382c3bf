
METRICS = ("clip", "dino", "csd")
# The paper's models (hub ids; nothing is downloaded on the project's machines: pass local folders).
DEFAULTS = {"clip": "openai/clip-vit-base-patch32", "dino": "facebook/dino-vits16", "csd": "./models/csd-vit-l14"}
