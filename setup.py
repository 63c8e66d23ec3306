"""The C loops of the data path (receiver/native/*.c, and each stage's C twin beside it, such as
receiver/flows/vxrecords.c), built as one library and loaded with ctypes.

Everything else is declared in pyproject.toml. The extension is optional: without a C
compiler the package installs and the numpy twins of these loops are used.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "receiver.native._vxnative",
            sources=["receiver/native/vxnative.c", "receiver/native/vxrecv.c", "receiver/native/vxread.c",
                     "receiver/native/vxguard.c", "receiver/flows/vxrecords.c"],
            depends=["receiver/native/vxoffsets.h", "receiver/native/vxsync.h"],
            include_dirs=["receiver/native"],
            extra_compile_args=["-O2", "-ffp-contract=off", "-fvisibility=hidden"],
            optional=True,
        )
    ]
)
