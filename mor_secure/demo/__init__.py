"""`mor demo`: a whole federation on this machine, each side a separate `mor` process over mutual TLS."""
