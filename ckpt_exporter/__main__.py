from ckpt_exporter.cli import main

raise SystemExit(main())
