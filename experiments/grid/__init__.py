"""A grid YAML read into a list of CellConfig: the document, the loader, a cell's identity (id, dir, labels)."""
