"""Network pieces every protocol uses: TLS contexts (server and upstream client) and the
PROXY protocol header, so HTTP and Thrift share them instead of one importing the other."""
