from edge_mer.cli import main

raise SystemExit(main())
