"""pytest plugin: the ``photoroom_emulator`` fixture (see :mod:`photoroom_bg.testing`)."""
