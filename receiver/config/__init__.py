"""Configuration: one TOML file validated at start, errors naming the key and the file.

- ``receiver.config.schema``: declarative validation of TOML tables into dataclasses (``opt``);
- ``receiver.config.file``: the whole file (``Config``: its sections, ``load_config``);
- ``receiver.config.engine``: the engine's section (``[engine]``); the other sections live with
  the part they configure (``receiver.listen.settings``, ``receiver.aws.settings``, each
  forwarder's config class);
- ``receiver.config.doc``: docs/configuration.md, generated from them.

(Nothing is imported here: the sections' modules import ``schema`` without loading the others.)
"""
