# cython: language_level=3
# Cython looks up the declarations of module vxcap._pcapfile as vxcap/_pcapfile.pxd on the include path (setup.py
# builds src_c/pcapfile.pyx as vxcap._pcapfile); they live in src_c/pcapfile.pxd, named after the stage like the .pyx.
include "../pcapfile.pxd"
