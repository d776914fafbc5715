# Every node gets the base role unless a node block says otherwise.
node default {
  include role::base
}
