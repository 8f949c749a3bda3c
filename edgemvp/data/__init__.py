"""Data layer: dataset sources, input transforms, tasks and WordNet."""
