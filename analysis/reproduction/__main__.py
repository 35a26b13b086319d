import sys

from analysis.reproduction import main

sys.exit(main())
