from livecap.cli import main

raise SystemExit(main())
