# cython: language_level=3
# Cython looks up the declarations of module vxcap._decode as vxcap/_decode.pxd on the include path (setup.py
# builds src_c/decode.pyx as vxcap._decode); they live in src_c/decode.pxd, named after the stage like the .pyx.
include "../decode.pxd"
