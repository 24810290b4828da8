from condure.cli import main

raise SystemExit(main())
