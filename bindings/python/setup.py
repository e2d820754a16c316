"""The package carries a native library, so its wheel must be platform-specific."""

from setuptools import setup
from setuptools.dist import Distribution


class NativeDistribution(Distribution):
    def has_ext_modules(self):
        return True


setup(distclass=NativeDistribution)
