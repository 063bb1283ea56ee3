"""Wings of the project, one subpackage each: ``data``, ``freeze`` (freezing and transfer), ``weights``,
``train``, ``eval``, ``deploy``, ``evolve``. The modules left here are the core helpers every wing may use:
``errors`` (one-line errors), ``safe_yaml``, ``optional`` (optional packages), ``runs`` (run folders), ``cli``
(device and DDP set-up), ``boxes`` (box formats, IoU, NMS) and ``fetch`` (the one HTTP download: progress bar,
resumable).
"""
