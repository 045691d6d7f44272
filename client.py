from chat.cli import client_main

if __name__ == "__main__":
    raise SystemExit(client_main())
