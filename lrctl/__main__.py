from lrctl.cli import main

raise SystemExit(main())
