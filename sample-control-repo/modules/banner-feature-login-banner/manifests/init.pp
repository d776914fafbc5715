# Show the login banner, framed (the version on the feature branch).
class banner (
  String $text = 'Authorised use only.',
) {
  notify { 'banner':
    message => "==== ${text} ====",
  }
}
