"""The C loops of the data path (the shared core receiver/native/vxnative.c, and each stage's C
twin beside its stage: capture/vxread.c and vxguard.c, listen/vxrecv.c, flows/vxrecords.c), built
as one library and loaded with ctypes (receiver/native/__init__.py).

Everything else is declared in pyproject.toml. The extension is optional: without a C
compiler the package installs and the numpy twins of these loops are used.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "receiver.native._vxnative",
            sources=["receiver/native/vxnative.c", "receiver/listen/vxrecv.c", "receiver/capture/vxread.c",
                     "receiver/capture/vxguard.c", "receiver/flows/vxrecords.c"],
            depends=["receiver/native/vxoffsets.h", "receiver/native/vxsync.h"],
            include_dirs=["receiver/native"],
            extra_compile_args=["-O2", "-ffp-contract=off", "-fvisibility=hidden"],
            optional=True,
        )
    ]
)
