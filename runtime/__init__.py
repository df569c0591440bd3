"""glassfinder_runtime: pure-numpy reference of the on-device pipeline (numpy, Pillow, LiteRT; never torch or tensorflow)."""
