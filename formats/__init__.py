"""Field catalogs, one TOML file per format (installed as the data package wsideid.formats)."""
