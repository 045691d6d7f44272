from chat.cli import server_main

if __name__ == "__main__":
    raise SystemExit(server_main())
