"""Values the command line shows before it runs anything (choices, defaults, suffixes), in a
module that imports nothing, so ``parttok --help`` starts without torch. The modules they
belong to import them from here."""

FPS = 20  # frames per second of the HumanML3D features (parttok.features)
TOKEN_SUFFIX = ".ptok"  # token files (parttok.tokenfile)
# How the model computes: in float32, or with bfloat16 matrix products (the codebooks and the
# code search stay float32), Lightning's names for the same choice in training.
PRECISIONS = ("32-true", "bf16-mixed")  # parttok.tokenizer
DECODE_FORMATS = ("joints", "features", "bvh")  # what decode writes (parttok.inference)
ANIMATION_SUFFIXES = (".gif", ".mp4")  # what render writes (parttok.render)
