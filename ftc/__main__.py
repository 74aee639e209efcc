from ftc.cli import main

raise SystemExit(main())
