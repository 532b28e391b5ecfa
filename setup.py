"""The package's modules, halton/, and as their data halton/conf the clone's top-level conf/ (Hydra's configs), so
that an installed package finds its configs (halton.validation.CONFIG_DIR). Everything else: pyproject.toml."""

from setuptools import find_namespace_packages, find_packages, setup

# conf/ and each of its folders, as packages of YAML files only: halton.conf, halton.conf.data, ...
CONFIGS = ["halton.conf", *(f"halton.conf.{name}" for name in find_namespace_packages(where="conf"))]

setup(packages=[*find_packages(include=["halton", "halton.*"]), *CONFIGS], package_dir={"halton.conf": "conf"},
      package_data={name: ["*.yaml"] for name in CONFIGS})
