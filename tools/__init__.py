"""Developer tools for pyvirtrpc (code generation); not shipped in the wheel."""
