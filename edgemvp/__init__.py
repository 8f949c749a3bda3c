"""edgemvp."""
