"""Which folders install under which import names (the metadata is in pyproject.toml).

The repository keeps its top-level folders, but `adapters` and `methods` are generic names
that other distributions already install (PyPI's `adapters` is AdapterHub), so they install
as `ovbench_adapters` and `ovbench_methods`; `configs/` ships inside the package as
`ovbench.configs` and the paper's published numbers (`results/reported/`) as `ovbench.reported`,
so a wheel finds its YAML files wherever it is installed. A new folder
under any of them is picked up here without an edit. docs/packaging.md explains the choice.
"""

from setuptools import find_packages, setup

FOLDERS = {"ovbench_adapters": "adapters", "ovbench_methods": "methods", "ovbench.configs": "configs",
           "ovbench.reported": "results/reported"}


def mapped_packages(name: str, folder: str) -> list[str]:
    return [name] + [f"{name}.{sub}" for sub in find_packages(where=folder)]


packages = find_packages(include=["ovbench", "ovbench.*"])
packages += mapped_packages("ovbench_adapters", "adapters")
packages += mapped_packages("ovbench_methods", "methods")
packages += ["ovbench.configs", "ovbench.reported"]  # data packages: their YAML travels as package data

setup(
    packages=packages,
    package_dir={"": ".", **FOLDERS},
    package_data={"ovbench.configs": ["**/*.yaml"], "ovbench.reported": ["*.yaml"]},
)
