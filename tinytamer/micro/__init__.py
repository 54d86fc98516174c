"""The bare-metal path: int8 model -> integer graph -> C -> host / emulated Cortex-M.

- :func:`tinytamer.micro.lower.lower`: a converted int8 fx GraphModule -> integer
  graph (:mod:`tinytamer.micro.ir`), run exactly by :mod:`tinytamer.micro.reference`;
- :func:`tinytamer.micro.codegen.generate`: model.c / model.h with a static arena
  (:mod:`tinytamer.micro.planner`) over the packaged kernels in ``runtime/``;
- :mod:`tinytamer.micro.toolchain`: host gcc (and sanitizer) builds, arm-none-eabi
  builds for Cortex-M4/M7, whole-program QEMU runs;
- :class:`tinytamer.micro.session.Session`: a host-driven session on an emulated
  Cortex-M (unicorn) with exact instruction counts and estimated cycles
  (:mod:`tinytamer.micro.cost`);
- :func:`tinytamer.micro.tuning.tune`: per-layer kernel schedules measured on the
  emulated device, with a persistent log;
- :func:`tinytamer.micro.program.build_program`: all of it for one device.

Submodules are imported on use, so ``import tinytamer.micro`` stays light.
"""
