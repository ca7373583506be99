from simstudy.cli import main

raise SystemExit(main())
