"""The GUI-free core of glue-mvmcut: geometry, names, archive access, cutting and combining."""
