declare module "pgpass" {
  interface PassConnection {
    readonly host?: string | undefined
    readonly port?: number | undefined
    readonly database?: string | undefined
    readonly user?: string | undefined
  }
  const pgpass: (connection: PassConnection, callback: (password: string | undefined) => void) => void
  export default pgpass
}
