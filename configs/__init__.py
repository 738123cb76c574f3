"""The YAML configuration tree (methods, datasets, benchmarks, protocols, experiments,
vocabularies), installed as the data package `ovbench.configs` so that every install finds it."""
