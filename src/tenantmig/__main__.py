import sys

from tenantmig.cli import main

sys.exit(main())
