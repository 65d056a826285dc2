"""Pipelines: files and numpy around the tensor-only models (tiling, detection, paste-back).

Import the submodule you need (``vrrestore.pipelines.image``, ``vrrestore.pipelines.face``). Nothing is
imported here, so using one pipeline never loads the other's dependencies.
"""
