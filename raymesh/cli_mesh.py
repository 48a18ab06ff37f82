"""Meshing subcommands (filled in by the meshing modules)."""

MESH_COMMANDS: dict = {}


def add_mesh_commands(sub) -> None:
    return None
