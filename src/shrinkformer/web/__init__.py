"""The runtime in a web page: the native library compiled to WebAssembly (``build.py``), the page
and its JavaScript (``static/``), and ``shrinkformer web-demo`` that writes a page with a model
beside it (``demo.py``). Standard library only: the page needs neither torch nor numpy."""
